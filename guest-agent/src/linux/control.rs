//! The agent's line protocol, spoken on the control socket of `guest-agent serve` (one process
//! owns the device; `alloc`, `free` and `stats` invocations talk to it, so grants outlive them).
//!
//! One request per line, one reply line per request:
//!
//! | request | reply |
//! |---|---|
//! | `alloc <pages> [<align_pages>]` | `ok gpa=0x<hex> pages=<n>` |
//! | `free <gpa>` | `ok pages=<n>` |
//! | `stats` | `ok <name>=<value> ...` |
//! | anything that fails | `err <one-line message>` |
//!
//! Numbers are decimal or `0x` hex.

use std::fmt;

use gcma_proto::gcma::stat;

use super::discovery::parse_c_int;

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/guest-agent.sock";

/// A parsed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Grant `nr_pages` contiguous pages aligned to `align_pages`.
    Alloc {
        /// Pages wanted.
        nr_pages: u64,
        /// Alignment in pages (power of two).
        align_pages: u64,
    },
    /// Return the grant at `gpa`.
    Free {
        /// Its guest-physical address.
        gpa: u64,
    },
    /// Read the device counters.
    Stats,
}

/// Why a request line is not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Empty line.
    #[error("empty request")]
    Empty,
    /// Unknown verb.
    #[error("unknown request {0:?} (expected alloc, free or stats)")]
    Unknown(String),
    /// Wrong arguments.
    #[error("usage: {0}")]
    Usage(&'static str),
}

/// Parses one request line.
pub fn parse_command(line: &str) -> Result<Command, CommandError> {
    let mut w = line.split_ascii_whitespace();
    let verb = w.next().ok_or(CommandError::Empty)?;
    let args: Vec<&str> = w.collect();
    let num = |s: &str, usage| parse_c_int(s).ok_or(CommandError::Usage(usage));
    match verb {
        "alloc" => {
            const U: &str = "alloc <pages> [<align_pages>]";
            let (nr, align) = match args.as_slice() {
                [n] => (num(n, U)?, 1),
                [n, a] => (num(n, U)?, num(a, U)?),
                _ => return Err(CommandError::Usage(U)),
            };
            if nr == 0 || !align.is_power_of_two() {
                return Err(CommandError::Usage(
                    "alloc <pages ≥ 1> [<align_pages, a power of two>]",
                ));
            }
            Ok(Command::Alloc {
                nr_pages: nr,
                align_pages: align,
            })
        }
        "free" => match args.as_slice() {
            [g] => Ok(Command::Free {
                gpa: num(g, "free <gpa>")?,
            }),
            _ => Err(CommandError::Usage("free <gpa>")),
        },
        "stats" if args.is_empty() => Ok(Command::Stats),
        "stats" => Err(CommandError::Usage("stats")),
        other => Err(CommandError::Unknown(other.to_string())),
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Alloc {
                nr_pages,
                align_pages,
            } => write!(f, "alloc {nr_pages} {align_pages}"),
            Command::Free { gpa } => write!(f, "free {gpa:#x}"),
            Command::Stats => write!(f, "stats"),
        }
    }
}

/// The name of a stats tag (`tag<N>` for tags this agent does not know).
pub fn stat_name(tag: u32) -> String {
    let n = match tag {
        stat::POOL_NR_PAGES => "pool_nr_pages",
        stat::WINDOW_NR_PAGES => "window_nr_pages",
        stat::GRANTS => "grants",
        stat::GRANTED_PAGES => "granted_pages",
        stat::CLEANCACHE_PUTS => "cleancache_puts",
        stat::CLEANCACHE_SUCC_GETS => "cleancache_succ_gets",
        stat::CLEANCACHE_FAILED_GETS => "cleancache_failed_gets",
        stat::CLEANCACHE_FLUSHES => "cleancache_flushes",
        stat::FRONTSWAP_SUCC_STORES => "frontswap_succ_stores",
        stat::FRONTSWAP_FAILED_STORES => "frontswap_failed_stores",
        stat::FRONTSWAP_LOADS => "frontswap_loads",
        stat::FRONTSWAP_INVALIDATES => "frontswap_invalidates",
        stat::BAD_REQUESTS => "bad_requests",
        other => return format!("tag{other}"),
    };
    n.to_string()
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A grant.
    Granted {
        /// Its guest-physical address.
        gpa: u64,
        /// Its length in pages.
        nr_pages: u64,
    },
    /// A grant was returned.
    Freed {
        /// Pages returned.
        nr_pages: u64,
    },
    /// Counters, `(tag, value)` in device order.
    Stats(Vec<(u32, u64)>),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Granted { gpa, nr_pages } => write!(f, "ok gpa={gpa:#x} pages={nr_pages}"),
            Reply::Freed { nr_pages } => write!(f, "ok pages={nr_pages}"),
            Reply::Stats(v) => {
                write!(f, "ok")?;
                for (t, val) in v {
                    write!(f, " {}={val}", stat_name(*t))?;
                }
                Ok(())
            }
        }
    }
}

/// Parses a reply line (the client side of the socket): `Ok(reply)` or `Err(message)`.
pub fn parse_reply(line: &str) -> Result<Reply, String> {
    let line = line.trim_end();
    if let Some(m) = line.strip_prefix("err ") {
        return Err(m.to_string());
    }
    let Some(rest) = line.strip_prefix("ok") else {
        return Err(format!("malformed reply {line:?}"));
    };
    let kv: Vec<(&str, &str)> = rest
        .split_ascii_whitespace()
        .filter_map(|p| p.split_once('='))
        .collect();
    let get = |k: &str| {
        kv.iter()
            .find(|(n, _)| *n == k)
            .and_then(|(_, v)| parse_c_int(v))
    };
    match (get("gpa"), get("pages")) {
        (Some(gpa), Some(nr_pages)) if kv.len() == 2 => Ok(Reply::Granted { gpa, nr_pages }),
        (None, Some(nr_pages)) if kv.len() == 1 => Ok(Reply::Freed { nr_pages }),
        _ => {
            let mut v = Vec::new();
            for (n, val) in kv {
                let tag = (0..u32::try_from(stat::COUNT).unwrap_or(0))
                    .find(|t| stat_name(*t) == n)
                    .or_else(|| n.strip_prefix("tag").and_then(|t| t.parse().ok()));
                match (tag, parse_c_int(val)) {
                    (Some(t), Some(x)) => v.push((t, x)),
                    _ => return Err(format!("malformed reply {line:?}")),
                }
            }
            Ok(Reply::Stats(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_command("alloc 16"),
            Ok(Command::Alloc {
                nr_pages: 16,
                align_pages: 1
            })
        );
        assert_eq!(
            parse_command("  alloc 0x200 512 \n"),
            Ok(Command::Alloc {
                nr_pages: 512,
                align_pages: 512
            })
        );
        assert!(parse_command("alloc 0").is_err());
        assert!(parse_command("alloc 4 3").is_err());
        assert!(parse_command("alloc").is_err());
        assert_eq!(
            parse_command("free 0x100000000"),
            Ok(Command::Free { gpa: 1 << 32 })
        );
        assert!(parse_command("free").is_err());
        assert_eq!(parse_command("stats"), Ok(Command::Stats));
        assert!(parse_command("stats now").is_err());
        assert_eq!(parse_command(""), Err(CommandError::Empty));
        assert!(matches!(
            parse_command("reboot"),
            Err(CommandError::Unknown(_))
        ));
        for c in [
            Command::Alloc {
                nr_pages: 3,
                align_pages: 4,
            },
            Command::Free { gpa: 0x1234 },
            Command::Stats,
        ] {
            assert_eq!(parse_command(&c.to_string()), Ok(c));
        }
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Granted {
                gpa: 1 << 32,
                nr_pages: 512,
            },
            Reply::Freed { nr_pages: 7 },
            Reply::Stats(vec![
                (stat::POOL_NR_PAGES, 4096),
                (stat::GRANTS, 1),
                (99, 5),
            ]),
            Reply::Stats(vec![]),
        ] {
            assert_eq!(parse_reply(&format!("{r}\n")), Ok(r.clone()), "{r}");
        }
        assert_eq!(parse_reply("err no grant"), Err("no grant".to_string()));
        assert!(parse_reply("hello").is_err());
        assert!(parse_reply("ok x=y").is_err());
    }
}
