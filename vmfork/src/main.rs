//! The `vmfork` binary: parse the command line, run, and turn every failure
//! into one line on stderr plus a distinct exit status.
#![deny(unsafe_op_in_unsafe_fn)]

mod cli;

use std::time::Instant;

use clap::Parser;
use cli::{dispatch, signals, Cli};

/// Many clones need many fds (VM, vCPU, irqfd each); use the hard limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    let started = Instant::now();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("vmfork: internal error (a bug, please report it): {info}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    },
                );
            }
            let rendered = e.render().to_string();
            // One line, but keep what a line ending in ':' introduces
            // (e.g. which required arguments are missing).
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut first = lines
                .next()
                .unwrap_or("invalid command line")
                .trim_start_matches("error: ")
                .to_string();
            if first.ends_with(':') {
                let rest: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
                first = format!("{first} {}", rest.join(", "));
            }
            eprintln!("vmfork: {first} (see vmfork --help)");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMFORK_LOG"))
        .with_writer(std::io::stderr)
        .init();
    signals::block_stop_signals();
    raise_fd_limit();
    let result = std::panic::catch_unwind(|| dispatch(cli, started));
    let code = match result {
        Ok(Ok(())) => 0,
        Ok(Err(vmfork_machine::error::Error::Reported(code))) => code,
        Ok(Err(e)) => {
            eprintln!("vmfork: error: {e}");
            e.exit_code()
        }
        Err(_) => 70,
    };
    std::process::exit(code);
}
