//! A Prometheus server of our own for a test: Debian's `prometheus` binary (ci/setup.sh installs
//! it) on a loopback port, with a temporary configuration and data directory, killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the server may take to come up or to scrape, before the test calls it a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// The `prometheus` binary, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    let out = Command::new("prometheus").arg("--version").output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from("prometheus")),
        _ => Err("no prometheus binary on PATH (ci/setup.sh installs Debian's)".into()),
    }
}

impl Prometheus {
    /// Starts Prometheus scraping every `(job, address)` each second, and waits until it is ready.
    pub fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            cfg +=
                &format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n");
        }
        let cfg_path = dir.join("prometheus.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut p = Prometheus {
            child,
            addr,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + HANG_GUARD;
        while !http_get(addr, "/-/ready").is_ok_and(|(s, _)| s == 200) {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}): {}", p.log());
            }
            assert!(Instant::now() < deadline, "prometheus never got ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `promql` now: the `data` of a successful answer, or the error Prometheus gave.
    pub fn query(&self, promql: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = http_get(self.addr, &path).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// The samples of an instant vector `promql`: labels and value.
    pub fn vector(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self
            .query(promql)
            .unwrap_or_else(|e| panic!("{promql}: {e}"));
        assert_eq!(data["resultType"], "vector", "{promql}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (s["metric"].clone(), v)
            })
            .collect()
    }

    /// The value of a `promql` that must have exactly one sample.
    pub fn scalar(&self, promql: &str) -> f64 {
        let v = self.vector(promql);
        assert_eq!(v.len(), 1, "{promql}: {v:?}");
        v[0].1
    }

    /// Waits until the latest scrape of each of `jobs` started after `after` (seconds since the
    /// epoch).
    pub fn wait_for_scrape_after(&self, jobs: &[&str], after: f64) {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let fresh = jobs.iter().all(|job| {
                self.query(&format!("timestamp(up{{job=\"{job}\"}})"))
                    .ok()
                    .and_then(|d| d["result"][0]["value"][1].as_str()?.parse::<f64>().ok())
                    .is_some_and(|t| t > after)
            });
            if fresh {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape after the run: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Prometheus {
    /// Waits until each of `jobs` has `n` scrapes in the last minute (what `rate(...[1m])` needs).
    pub fn wait_for_scrapes(&self, jobs: &[&str], n: usize) {
        let deadline = Instant::now() + HANG_GUARD;
        let enough = |job: &&str| {
            self.query(&format!("count_over_time(up{{job=\"{job}\"}}[1m])"))
                .ok()
                .and_then(|d| d["result"][0]["value"][1].as_str()?.parse::<f64>().ok())
                .is_some_and(|c| c >= n as f64)
        };
        while !jobs.iter().all(enough) {
            assert!(Instant::now() < deadline, "too few scrapes: {}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET over HTTP/1.0 (so the answer is neither chunked nor kept alive): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(HANG_GUARD))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((status, body))
}
