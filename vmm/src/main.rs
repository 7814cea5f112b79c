//! `vmm`: launches KVM microVMs running kernel-less payloads.

use std::path::PathBuf;
use std::process::ExitCode;

use balloon::virtio_balloon::{Balloon, BalloonConfig};
use clap::{Parser, Subcommand};
use vmm::payloads::BuiltinPayload;
use vmm::{Hypervisor, MicroVm, SerialOutput, VmConfig, VmOutcome};

/// A rust-vmm VMM for microVMs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one microVM with a kernel-less payload until it exits or faults.
    ///
    /// The VMM's exit status is the payload's exit code (truncated to 8 bits); a guest fault
    /// prints the faulting RIP and exits with status 125.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Payload to run: a built-in name (hello, exit, crash, balloon, fill, spin, gcma) or the
    /// path of a static x86-64 ELF linked at 0x400000 (see vmm/payloads for how to build one).
    #[arg(long)]
    payload: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=3328))]
    mem_mib: u64,
    /// Argument handed to the payload in `rsi` (the `exit` payload exits with it).
    #[arg(long, default_value_t = 0)]
    arg: u64,
    /// Write the guest's serial console to this file instead of standard output.
    #[arg(long)]
    serial_file: Option<PathBuf>,
    /// Add a virtio-balloon device with this initial target, in 4 KiB pages (the `balloon`
    /// payload inflates to it).
    #[arg(long)]
    balloon_pages: Option<u32>,
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let elf: Vec<u8> = match args.payload.parse::<BuiltinPayload>() {
        Ok(builtin) => builtin.elf().to_vec(),
        Err(_) => std::fs::read(&args.payload)
            .map_err(|e| format!("cannot read payload {}: {e}", args.payload))?,
    };
    let hv = Hypervisor::open().map_err(|e| e.to_string())?;
    let config = VmConfig {
        mem_bytes: args.mem_mib << 20,
        payload_arg: args.arg,
        serial: args
            .serial_file
            .map_or(SerialOutput::Stdout, SerialOutput::File),
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&hv, &config).map_err(|e| e.to_string())?;
    let balloon = match args.balloon_pages {
        Some(target_pages) => Some(
            vm.add_virtio_device(Balloon::new(BalloonConfig {
                target_pages,
                ..BalloonConfig::default()
            }))
            .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    vm.load_payload(&elf).map_err(|e| e.to_string())?;
    let outcome = vm.run().map_err(|e| e.to_string())?;
    log::info!("exit counts: {:?}", vm.stats());
    if let Some(slot) = balloon {
        let status = slot
            .transport
            .lock()
            .map_err(|_| "balloon device lock poisoned".to_string())?
            .device()
            .status();
        log::info!(
            "balloon: target {} pages, actual {}, inflated {}",
            status.target_pages,
            status.actual_pages,
            status.inflated_pages
        );
    }
    Ok(match outcome {
        VmOutcome::Exited { code } => {
            log::info!("payload exited with code {code}");
            ExitCode::from(code as u8)
        }
        VmOutcome::Shutdown { rip } => {
            let place = if vm.image().is_some_and(|i| i.code_contains(rip)) {
                "in the payload's code"
            } else {
                "outside the payload's code"
            };
            eprintln!("vmm: guest fault at rip {rip:#x} ({place})");
            ExitCode::from(125)
        }
        VmOutcome::Stopped { rip } => {
            eprintln!("vmm: stopped at rip {rip:#x}");
            ExitCode::from(125)
        }
        VmOutcome::Halted { rip } => {
            eprintln!("vmm: guest halted at rip {rip:#x}");
            ExitCode::from(125)
        }
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    result.unwrap_or_else(|msg| {
        eprintln!("vmm: {msg}");
        ExitCode::from(1)
    })
}
