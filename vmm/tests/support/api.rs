//! A `vmm run` child process with a control API socket, and a raw HTTP client for it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long anything may take before a test calls it a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A running `vmm run --api-sock`; killed when dropped.
pub struct Vmm {
    child: Child,
    dir: PathBuf,
    /// The API socket.
    pub sock: PathBuf,
}

impl Vmm {
    /// Starts `vmm run` with `args` and `--api-sock` in a fresh directory named after `tag`, and
    /// waits for the socket.
    pub fn start(tag: &str, args: &[&str]) -> Vmm {
        let dir = std::env::temp_dir().join(format!("vmm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("run")
            .args(args)
            .arg("--api-sock")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vmm runs");
        let mut vmm = Vmm { child, dir, sock };
        let deadline = Instant::now() + HANG_GUARD;
        while UnixStream::connect(&vmm.sock).is_err() {
            assert!(Instant::now() < deadline, "API socket never appeared");
            if let Some(status) = vmm.child.try_wait().unwrap() {
                panic!("vmm exited early ({status}): {}", vmm.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        vmm
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (within the hang guard) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "vmm did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the process wrote to standard error (after it exited).
    pub fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    /// One request on a fresh connection: status and body.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        request(&self.sock, method, path, body)
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request to the API at `sock`: status and body.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

/// The `fault_message` of an error body, checking it has Firecracker's shape and nothing else.
pub fn fault(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let m = v["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message: {body}"));
    assert!(!m.is_empty());
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{body}");
    m.to_string()
}
