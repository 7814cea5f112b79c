//! `guest-agent serve`: one process owns the device and answers the [`super::control`] line
//! protocol on a Unix socket, so grants live as long as the server, not as one invocation.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{info, warn};

use crate::hal::Hal;

use super::agent::Agent;
use super::control::{parse_command, parse_reply, Command, Reply};

/// Longest request line accepted.
const MAX_LINE: usize = 256;

/// Answers one request line.
pub fn answer<H: Hal>(agent: &mut Agent<H>, line: &str) -> String {
    match parse_command(line) {
        Err(e) => format!("err {e}"),
        Ok(cmd) => match agent.execute(cmd) {
            Ok(r) => r.to_string(),
            Err(e) => format!("err {}", one_line(&e.to_string())),
        },
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Serves connections on `listener` one at a time until `stop` is set (checked every 100 ms).
/// Each connection may send any number of request lines.
pub fn serve<H: Hal>(
    agent: &mut Agent<H>,
    listener: &UnixListener,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_connection(agent, stream, stop) {
                    warn!("control connection: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    info!("stop requested");
    Ok(())
}

fn serve_connection<H: Hal>(
    agent: &mut Agent<H>,
    stream: UnixStream,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    // Bytes of the current line; kept across read timeouts (`read_until` keeps what it read).
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match (&mut r).take(room).read_until(b'\n', &mut line) {
            Ok(0) if line.is_empty() => return Ok(()),
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line).into_owned();
                let reply = answer(agent, &text);
                info!("{} -> {reply}", text.trim());
                writeln!(w, "{reply}")?;
                line.clear();
            }
            Ok(_) if line.len() > MAX_LINE => {
                writeln!(w, "err request line longer than {MAX_LINE} bytes")?;
                return Ok(());
            }
            // End of stream in the middle of a line.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server listens on the socket.
    #[error("cannot reach guest-agent server at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("guest-agent server connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
}

/// Sends one request to the server at `path` and returns its reply.
pub fn request(path: &Path, cmd: Command) -> Result<Reply, ClientError> {
    let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = s.try_clone()?;
    writeln!(w, "{cmd}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(ClientError::Server(
            "server closed the connection without answering".into(),
        ));
    }
    parse_reply(&line).map_err(ClientError::Server)
}
