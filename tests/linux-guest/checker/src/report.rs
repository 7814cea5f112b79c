//! The console protocol: one line per event, `GCMA-CHECK event=<name> key=value ...`.
//!
//! Values never contain whitespace (it is replaced by `_` when a record is built), so a line splits
//! on whitespace and each token on its first `=`. The kernel may print on the same console, so a
//! parser looks for the prefix anywhere in a line.
//!
//! Events the checker prints:
//! - `start`: userspace reached (`uptime_ms`, memory figures), first line of every mode;
//! - `progress`: during a swap storm when `--progress-mib` is set;
//! - `read`: one per page-cache read;
//! - `waiting` / `resumed`: around a pause for the host (`phase`, `before_read`);
//! - `summary`: the mode's result, with `ok=1` or `ok=0`;
//! - `error`: the options could not be read (`error=<reason>`); a run that fails later prints a
//!   `summary` with `ok=0` and `error=<reason>`;
//! - `exit`: printed by /init with the checker's exit `status`, just before power-off.

use std::fmt::Display;

/// Prefix of every line of the protocol.
pub const PREFIX: &str = "GCMA-CHECK";

/// One protocol line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The event name (`summary`, `read`, ...).
    pub event: String,
    /// The other fields, in order.
    pub fields: Vec<(String, String)>,
}

fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

impl Record {
    /// A record of `event` with no fields yet.
    pub fn new(event: &str) -> Self {
        Self {
            event: clean(event),
            fields: Vec::new(),
        }
    }

    /// Adds a field (whitespace in the key or value becomes `_`; an empty value becomes `-`).
    pub fn field(mut self, key: &str, value: impl Display) -> Self {
        self.push(key, value);
        self
    }

    /// Adds a field in place.
    pub fn push(&mut self, key: &str, value: impl Display) {
        self.fields
            .push((clean(key).replace('=', "_"), clean(&value.to_string())));
    }

    /// The line, without a newline.
    pub fn to_line(&self) -> String {
        let mut s = format!("{PREFIX} event={}", self.event);
        for (k, v) in &self.fields {
            s.push(' ');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s
    }

    /// Parses the record in `line`, if it holds one (the prefix may follow other text).
    pub fn parse(line: &str) -> Option<Record> {
        let start = line.find(PREFIX)?;
        let mut tokens = line[start + PREFIX.len()..].split_whitespace();
        let mut fields = Vec::new();
        let mut event = None;
        for tok in tokens.by_ref() {
            let Some((k, v)) = tok.split_once('=') else {
                continue;
            };
            if k == "event" && event.is_none() {
                event = Some(v.to_string());
            } else {
                fields.push((k.to_string(), v.to_string()));
            }
        }
        Some(Record {
            event: event?,
            fields,
        })
    }

    /// The value of `key` (the first one if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as an unsigned integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// Whether the record says `ok=1`.
    pub fn ok(&self) -> bool {
        self.get("ok") == Some("1")
    }
}

impl Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_cleans() {
        let r = Record::new("summary")
            .field("mode", "swap")
            .field("pages", 40960)
            .field("error", "mkswap failed: no such\tdevice")
            .field("empty", "")
            .field("a=b", "c=d");
        let line = r.to_line();
        assert_eq!(
            line,
            "GCMA-CHECK event=summary mode=swap pages=40960 error=mkswap_failed:_no_such_device empty=- a_b=c=d"
        );
        assert_eq!(Record::parse(&line), Some(r.clone()));
        let parsed = Record::parse(&format!("[   12.5] noise {line}\r")).unwrap();
        assert_eq!(parsed, r);
        assert_eq!(parsed.get_u64("pages"), Some(40960));
        assert_eq!(parsed.get("a_b"), Some("c=d"));
        assert!(!parsed.ok());
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(Record::parse("Run /init as init process"), None);
        assert_eq!(Record::parse("GCMA-CHECK no event here"), None);
        assert!(Record::parse("GCMA-CHECK event=summary ok=1").unwrap().ok());
    }
}
