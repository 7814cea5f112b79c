//! One VMM process per guest: starting `gcma-hostd` and `vmm agent` processes, reading their
//! output and metrics. Used by `vmm demo --daemon`, the multi-process tests and the benchmarks.
//!
//! [`Hostd`] runs the daemon with its vhost-user gcma socket and control socket in a directory
//! of the caller's; [`AgentProcess`] runs `vmm agent` (see `vmm agent --help`) and delivers its
//! `event <tag> <value>` lines on a channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver};

/// Finds the executable `name`: next to the running executable (or one directory up, for test
/// and bench executables in `target/<profile>/deps`), else on `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A running `gcma-hostd`. Dropping it kills it.
#[derive(Debug)]
pub struct Hostd {
    child: Option<Child>,
    /// The vhost-user gcma socket VMMs attach to.
    pub socket: PathBuf,
    /// The control socket (HTTP: `/metrics`, ...).
    pub api: PathBuf,
    /// Where its log (standard error) goes.
    pub log: PathBuf,
}

impl Hostd {
    /// Starts `binary` with a `pool_mib` pool, `--gcma-socket <dir>/gcma.sock`, `--api-sock
    /// <dir>/api.sock` and `extra` flags, logging to `<dir>/gcma-hostd.log`; waits (at most 30 s)
    /// until both sockets exist.
    pub fn start(
        binary: &Path,
        dir: &Path,
        pool_mib: u64,
        extra: &[String],
    ) -> std::io::Result<Self> {
        let socket = dir.join("gcma.sock");
        let api = dir.join("api.sock");
        let log = dir.join("gcma-hostd.log");
        let child = Command::new(binary)
            .arg("--pool-mib")
            .arg(pool_mib.to_string())
            .arg("--gcma-socket")
            .arg(&socket)
            .arg("--api-sock")
            .arg(&api)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut d = Hostd {
            child: Some(child),
            socket,
            api,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(d.socket.exists() && d.api.exists()) {
            if let Some(status) = d.try_wait() {
                return Err(std::io::Error::other(format!(
                    "gcma-hostd exited {status} at start: {}",
                    d.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "gcma-hostd did not create its sockets in 30 s: {}",
                    d.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `GET /metrics` on the control socket.
    pub fn metrics(&self) -> std::io::Result<String> {
        let (status, body) = http_unix(&self.api, "GET", "/metrics")?;
        if status != 200 {
            return Err(std::io::Error::other(format!("/metrics answered {status}")));
        }
        Ok(body)
    }

    /// Open file descriptors of the daemon now (`/proc/PID/fd`).
    pub fn fd_count(&self) -> std::io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Resident set size of the daemon now, bytes (`VmRSS` in `/proc/PID/status`).
    pub fn rss_bytes(&self) -> std::io::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| std::io::Error::other("no VmRSS"))
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid (not reaped yet, so not reused).
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// SIGTERM, then waits up to `timeout` (SIGKILL after it).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sum of the samples of metric `name` (exact name, before any label set) whose labels include
/// every `key="value"` of `labels`, in Prometheus or OpenMetrics text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            if !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// One HTTP/1.1 request over a Unix socket: (status, body). Chunked bodies are decoded.
pub fn http_unix(sock: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A line of `vmm agent` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLine {
    /// A mailbox event (tags: `crate::abi::EV_*`).
    Event {
        /// The tag.
        tag: u64,
        /// The value.
        value: u64,
    },
    /// The last line: how the guest ended.
    Outcome(String),
}

/// A running `vmm agent` process. Dropping it kills it.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// Its output lines, in order; disconnected once the process closed standard output.
    pub lines: Receiver<AgentLine>,
    /// Where its log (standard error) goes.
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `vmm agent <args>` from the `vmm` executable `binary`, logging to `log`.
    pub fn spawn(binary: &Path, args: &[String], log: &Path) -> std::io::Result<Self> {
        let mut child = Command::new(binary)
            .arg("agent")
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let (tx, rx) = unbounded();
        std::thread::Builder::new()
            .name("agent-lines".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut w = line.split_whitespace();
                    let parsed = match w.next() {
                        Some("event") => {
                            let tag = w.next().and_then(|t| t.parse().ok());
                            let value = w.next().and_then(|v| v.parse().ok());
                            match (tag, value) {
                                (Some(tag), Some(value)) => Some(AgentLine::Event { tag, value }),
                                _ => None,
                            }
                        }
                        Some("outcome") => Some(AgentLine::Outcome(
                            line.trim_start_matches("outcome").trim().to_string(),
                        )),
                        _ => None,
                    };
                    if let Some(p) = parsed {
                        if tx.send(p).is_err() {
                            break;
                        }
                    }
                }
            })?;
        Ok(AgentProcess {
            child: Some(child),
            stdin,
            lines: rx,
            log: log.to_path_buf(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Asks the guest to finish (a `stop` line on its standard input).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the exit; kills the process after it (then `None`).
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
