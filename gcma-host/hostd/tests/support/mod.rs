//! Runs the `gcma-hostd` binary for tests: start it with flags, talk to its control socket
//! (HTTP over a Unix socket), read its metrics, stop it with SIGTERM or SIGKILL.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The daemon binary cargo built for these tests.
pub const HOSTD: &str = env!("CARGO_BIN_EXE_gcma-hostd");

/// A running daemon. Dropping it kills it.
pub struct HostD {
    child: Option<Child>,
    /// Its control socket.
    pub api: PathBuf,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
    /// The flags it was started with.
    pub args: Vec<String>,
}

impl HostD {
    /// Starts the daemon with `args` plus `--api-sock <dir>/api.sock`, logging to
    /// `<dir>/<tag>.log`, and waits until the control socket and every path in `sockets`
    /// exist.
    pub fn start(dir: &Path, tag: &str, args: &[String], sockets: &[PathBuf]) -> HostD {
        let api = dir.join("api.sock");
        let log = dir.join(format!("{tag}.log"));
        let mut all: Vec<String> = args.to_vec();
        all.push("--api-sock".into());
        all.push(api.display().to_string());
        let child = Command::new(HOSTD)
            .args(&all)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("gcma-hostd starts");
        let mut d = HostD {
            child: Some(child),
            api,
            log,
            args: args.to_vec(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut want: Vec<PathBuf> = sockets.to_vec();
        want.push(d.api.clone());
        while !want.iter().all(|p| p.exists()) {
            if let Some(status) = d.try_wait() {
                panic!("gcma-hostd exited {status} at start:\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gcma-hostd did not create its sockets:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// One HTTP request on the control socket: (status, body).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(&self.api, method, path, body)
    }

    /// The metrics text.
    pub fn metrics(&self) -> String {
        let (status, body) = self.request("GET", "/metrics", "");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels)
    }

    /// Takes a grant of `pages` pages; returns its id, or the error body.
    pub fn grant(&self, pages: u64) -> Result<u64, String> {
        let (status, body) = self.request("POST", "/grants", &format!("{{\"pages\": {pages}}}"));
        if status != 201 {
            return Err(format!("{status} {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        v["id"].as_u64().ok_or(body)
    }

    /// Returns a grant.
    pub fn free(&self, id: u64) {
        let (status, body) = self.request("DELETE", &format!("/grants/{id}"), "");
        assert_eq!(status, 200, "{body}");
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the exit.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10))
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return s;
            }
            if Instant::now() >= deadline {
                self.signal(libc::SIGKILL);
                panic!(
                    "gcma-hostd did not exit within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostD {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP/1.1 request over a Unix socket: (status, body).
pub fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: gcma\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The server may send the body chunked: undo it.
    let body = if out
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sum of the samples of `name` (exactly: `name` or `name{...}`) whose labels include all of
/// `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}
