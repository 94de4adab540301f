//! `vmfork clone DIR -- CMD ARGS`: the command every clone runs, and its
//! output printed line by line with the clone's id in front.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clone_args::ExecArgs;
use vmfork_clone::fleet::Fleet;
use vmfork_clone::interrupt::Interrupt;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::{ExecOutcome, ExecSpec};

/// What a program gets as PATH unless the user gives one: the usual
/// directories of a Linux root.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long past the command's own deadline the host waits for a clone's
/// answer: the agent kills the program at its deadline and answers then.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// The encoded exec request, or None without a command.
pub fn request(args: &ExecArgs) -> Result<Option<Arc<Vec<u8>>>> {
    if args.command.is_empty() {
        return Ok(None);
    }
    let mut env: Vec<Vec<u8>> = args.env.iter().map(|e| e.as_bytes().to_vec()).collect();
    if !args.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.as_bytes().to_vec());
    }
    let stdin = match &args.stdin {
        None => None,
        Some(path) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes)?;
            Some(bytes)
        }
        Some(path) => Some(std::fs::read(path).map_err(|source| Error::Image {
            what: "stdin",
            path: path.clone(),
            source,
        })?),
    };
    let spec = ExecSpec {
        argv: args.command.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        cwd: args.cwd.as_ref().map(|c| c.as_os_str().as_bytes().to_vec()),
        stdin,
        // The parser bounds it to DEFAULT_OUTPUT_CAP.
        output_cap: u32::try_from(args.output_cap).unwrap_or(u32::MAX),
        timeout: Some(args.exec_timeout),
        ..ExecSpec::default()
    };
    Ok(Some(Arc::new(spec.encode()?)))
}

/// Prints every clone's output, stdout to stdout and stderr to stderr,
/// each line as `clone N: line`, and each failure on stderr. Returns the
/// exit status vmfork ends with: the first failing clone's, or None when
/// every command exited 0.
/// Clones a stop signal cut short get no line: the caller says it once.
pub fn print_results(fleet: &Fleet, args: &ExecArgs, interrupt: &Interrupt) -> Option<i32> {
    let deadline = Instant::now() + args.exec_timeout + ANSWER_GRACE;
    let mut status = None;
    let program = args.command[0].to_string_lossy();
    for (id, result) in fleet.exec_results(deadline) {
        let out = match result {
            Ok(out) => out,
            Err(_) if interrupt.fired() => continue,
            Err(e) => {
                eprintln!("vmfork: clone {id}: {e}");
                status.get_or_insert(e.exit_code());
                continue;
            }
        };
        prefixed(&mut std::io::stdout().lock(), id, &out.stdout);
        prefixed(&mut std::io::stderr().lock(), id, &out.stderr);
        for (cut, name) in [
            (out.stdout_truncated, "stdout"),
            (out.stderr_truncated, "stderr"),
        ] {
            if cut {
                eprintln!(
                    "vmfork: clone {id}: {name} cut at {} bytes (--output-cap)",
                    args.output_cap
                );
            }
        }
        if out.outcome != ExecOutcome::Exited(0) {
            eprintln!("vmfork: clone {id}: {program} {}", out.outcome);
            status.get_or_insert(i32::from(out.outcome.shell_status()));
        }
    }
    status
}

fn prefixed(to: &mut impl Write, id: u64, bytes: &[u8]) {
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let _ = write!(to, "clone {id}: ");
        let _ = to.write_all(line);
        let _ = to.write_all(b"\n");
    }
}
