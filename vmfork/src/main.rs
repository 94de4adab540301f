//! The `vmfork` binary: parse the command line, run, and turn every failure
//! into one line on stderr plus a distinct exit status.
#![deny(unsafe_op_in_unsafe_fn)]

mod cli;

use std::time::Instant;

use clap::FromArgMatches;
use cli::{command, dispatch, signals, Cli, Command};

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

/// Ends the process for a command line clap did not accept: help and
/// version on stdout with status 0; a bad value for a flag as an invalid
/// argument (status 3); anything else as a usage error (status 2). Errors
/// are one line on stderr.
fn refuse(e: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            std::process::exit(0);
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::exit(2);
        }
        _ => {}
    }
    if let Some(why) = invalid_value(e) {
        eprintln!("vmfork: invalid argument: {why}");
        std::process::exit(3);
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

/// `FLAG "VALUE": why` when clap refused a value given to a flag: one its
/// parser rejected (ValueValidation), or one outside the flag's choices
/// (InvalidValue). A missing value, and a positional choice such as the
/// shell of `completions`, stay usage errors: like a subcommand name, they
/// say what to do rather than how much.
fn invalid_value(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use std::error::Error as _;
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    // clap shows an argument as "--uid <UID>" or "<PAGES>".
    let arg = context(ContextKind::InvalidArg);
    let flag = arg.map(|a| a.split(' ').next().unwrap_or(a));
    let value = context(ContextKind::InvalidValue);
    match e.kind() {
        ErrorKind::ValueValidation => match (flag, value) {
            (Some(flag), Some(value)) => {
                let why = e
                    .source()
                    .map_or_else(|| "invalid value".to_string(), |s| s.to_string());
                Some(format!("{flag} {value:?}: {why}"))
            }
            // The parsers in cli::args name the flag and the value.
            _ => {
                let rendered = e.render().to_string();
                let line = rendered.lines().next().unwrap_or("invalid value");
                Some(line.trim_start_matches("error: ").to_string())
            }
        },
        ErrorKind::InvalidValue => {
            let flag = flag.filter(|f| f.starts_with('-'))?;
            let value = value.filter(|v| !v.is_empty())?;
            let choices = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => format!("expected one of {}", v.join(", ")),
                _ => "not one of its choices".into(),
            };
            Some(format!("{flag} {value:?}: {choices}"))
        }
        _ => None,
    }
}

fn main() {
    let started = Instant::now();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("vmfork: internal error (a bug, please report it): {info}");
    }));
    let cli = match command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => refuse(&e),
    };
    // Without VMFORK_LOG the filter shows only ERROR events, which only
    // serve's libraries (hyper, tokio) may emit: other commands skip the
    // subscriber, about 50 us of a restore's start here.
    if std::env::var_os("VMFORK_LOG").is_some() || matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMFORK_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
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
