//! `gcmatest.*` parameters on the kernel command line, turned into the checker's argv.
//!
//! The kernel leaves parameters it does not know in `/proc/cmdline`, so the host selects the
//! checker's mode and options with `-append`: `gcmatest.mode=swap gcmatest.mib=160` becomes
//! `guest-checker swap --mib 160`. Keys may use `_` or `-` (the kernel treats them alike in module
//! parameters); a key may repeat.

/// Prefix of the parameters that belong to the checker.
pub const PREFIX: &str = "gcmatest.";

/// Why a kernel command line does not select a checker run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// No `gcmatest.mode=` parameter.
    #[error("no {PREFIX}mode= parameter on the kernel command line")]
    NoMode,
    /// `gcmatest.mode=` given twice.
    #[error("{PREFIX}mode= given twice ({0:?} and {1:?})")]
    TwoModes(String, String),
    /// A parameter with an empty key, such as `gcmatest.=1`.
    #[error("empty key in kernel parameter {0:?}")]
    EmptyKey(String),
}

/// Splits a kernel command line into parameters the way the kernel does: on whitespace outside
/// double quotes, with the quotes removed (`a="b c"` is one parameter `a=b c`).
pub fn split(cmdline: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                started = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if started {
                    params.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        params.push(cur);
    }
    params
}

/// Turns the `gcmatest.*` parameters of `cmdline` into the checker's argv (without the program
/// name): the mode first, then `--key value` (or `--key` for a parameter without `=`), in order.
pub fn to_args(cmdline: &str) -> Result<Vec<String>, CmdlineError> {
    let mut mode: Option<String> = None;
    let mut rest = Vec::new();
    for param in split(cmdline) {
        let Some(body) = param.strip_prefix(PREFIX) else {
            continue;
        };
        let (key, value) = match body.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (body, None),
        };
        if key.is_empty() {
            return Err(CmdlineError::EmptyKey(param.clone()));
        }
        let key = key.replace('_', "-");
        if key == "mode" {
            let value = value.unwrap_or_default().to_string();
            if let Some(old) = mode.replace(value.clone()) {
                return Err(CmdlineError::TwoModes(old, value));
            }
            continue;
        }
        rest.push(format!("--{key}"));
        if let Some(v) = value {
            rest.push(v.to_string());
        }
    }
    let mode = mode.ok_or(CmdlineError::NoMode)?;
    let mut args = vec![mode];
    args.extend(rest);
    Ok(args)
}

/// Formats one parameter for the kernel command line, quoting a value with whitespace.
pub fn param(key: &str, value: impl std::fmt::Display) -> String {
    let value = value.to_string();
    if value.chars().any(char::is_whitespace) {
        format!("{PREFIX}{key}=\"{value}\"")
    } else {
        format!("{PREFIX}{key}={value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            split("  console=ttyS0 quiet a=\"b c\" \"d e\"=f\n"),
            ["console=ttyS0", "quiet", "a=b c", "d e=f"]
        );
        assert_eq!(split("x=\"\""), ["x="]);
        assert!(split(" \t\n").is_empty());
    }

    #[test]
    fn turns_parameters_into_argv() {
        let args = to_args(
            "console=ttyS0 gcmatest.mib=160 quiet gcmatest.mode=swap gcmatest.verify_passes=3 gcmatest.pause-before=2 gcmatest.pause_before=3 gcmatest.flag",
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "swap",
                "--mib",
                "160",
                "--verify-passes",
                "3",
                "--pause-before",
                "2",
                "--pause-before",
                "3",
                "--flag"
            ]
        );
    }

    #[test]
    fn rejects_missing_or_double_mode() {
        assert_eq!(to_args("quiet gcmatest.mib=1"), Err(CmdlineError::NoMode));
        assert_eq!(
            to_args("gcmatest.mode=swap gcmatest.mode=cache"),
            Err(CmdlineError::TwoModes("swap".into(), "cache".into()))
        );
        assert!(matches!(
            to_args("gcmatest.mode=swap gcmatest.=1"),
            Err(CmdlineError::EmptyKey(_))
        ));
    }

    #[test]
    fn quotes_values_with_spaces() {
        assert_eq!(param("file", "a b"), "gcmatest.file=\"a b\"");
        assert_eq!(param("mib", 7), "gcmatest.mib=7");
        assert_eq!(to_args(&param("mode", "x y")).unwrap(), ["x y"]);
    }
}
