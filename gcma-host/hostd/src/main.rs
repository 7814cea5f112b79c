//! `gcma-hostd`: see `gcma-hostd --help` and the README's "Use the pool from QEMU".

use clap::Parser;
use gcma_hostd::cli::Cli;
use gcma_hostd::daemon::Daemon;

/// Blocks SIGTERM and SIGINT in this thread, and so in every thread started after, so that the
/// main thread can take them with `sigwait`.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset, which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn wait_for_stop_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    loop {
        // SAFETY: `set` is initialised and `sig` is a valid out pointer.
        let r = unsafe { libc::sigwait(set, &mut sig) };
        if r == 0 {
            return sig;
        }
    }
}

fn main() {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let signals = block_stop_signals();
    if cli.no_seccomp {
        log::warn!("gcma-hostd: seccomp filters are off (--no-seccomp)");
    } else {
        use gcma_seccomp::ThreadKind;
        let kinds = [
            ThreadKind::Vhost,
            ThreadKind::Http,
            ThreadKind::Zeroer,
            ThreadKind::Housekeeping,
        ];
        if let Err(e) = gcma_seccomp::install("gcma-hostd", &kinds) {
            eprintln!("gcma-hostd: {}", gcma_host::api::ErrorChain(&e));
            std::process::exit(1);
        }
    }
    let daemon = match Daemon::start(&cli) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gcma-hostd: {}", gcma_host::api::ErrorChain(&e));
            std::process::exit(1);
        }
    };
    let sig = wait_for_stop_signal(&signals);
    log::info!(
        "gcma-hostd: {} received, stopping",
        if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    );
    match daemon.shutdown() {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("gcma-hostd: {}", gcma_host::api::ErrorChain(&e));
            std::process::exit(1);
        }
    }
}
