//! `guest-checker`: runs in a test guest (the kit's /init starts it) and prints `GCMA-CHECK`
//! lines on the console. See the library's documentation for the modes and the line format.

mod cache;
mod swap;
mod sys;

use std::process::ExitCode;

use clap::Parser;
use guest_checker::cli::{Cli, Mode};
use guest_checker::report::Record;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        // The serial console is a terminal to the guest but a log to the host.
        .write_style(env_logger::WriteStyle::Never)
        .init();
    let cli = Cli::parse();
    let mode = match (&cli.kernel_cmdline, cli.mode) {
        (Some(path), _) => {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| Cli::from_kernel_cmdline(&text));
            match parsed {
                Ok(mode) => mode,
                Err(e) => {
                    sys::emit(&Record::new("error").field("error", e));
                    return ExitCode::from(2);
                }
            }
        }
        (None, Some(mode)) => mode,
        (None, None) => {
            eprintln!("guest-checker: give a mode (swap, cache, boot) or --kernel-cmdline FILE; see --help");
            return ExitCode::from(2);
        }
    };

    sys::emit(&sys::start_record(mode.name()));
    let result = match &mode {
        Mode::Swap(args) => swap::run(args),
        Mode::Cache(args) => cache::run(args),
        Mode::Boot => Ok(Record::new("summary").field("ok", 1)),
    };
    let summary = match result {
        Ok(mut r) => {
            r.fields.insert(0, ("mode".into(), mode.name().into()));
            r
        }
        Err(e) => {
            log::error!("{} failed: {e}", mode.name());
            Record::new("summary")
                .field("mode", mode.name())
                .field("ok", 0)
                .field("error", e)
        }
    };
    sys::emit(&summary);
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
