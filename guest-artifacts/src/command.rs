//! Running the external tools (tar, patch, make, mkfs.ext4) with their output
//! appended to a log file, so the terminal stays quiet and a failure points
//! at a file with everything in it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Runs `cmd` with stdout and stderr appended to `log`. `step` names it in
/// errors ("make vmlinux bzImage").
pub fn run_logged(cmd: &mut Command, step: &str, log: &Path) -> Result<()> {
    let mut file = open_log(log)?;
    // The exact command line first, so the log can be replayed by hand.
    writeln!(file, "\n$ {cmd:?}").map_err(Error::io(format!("write {}", log.display())))?;
    let stderr = file
        .try_clone()
        .map_err(Error::io(format!("dup {}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(stderr);
    let status = spawn_wait(cmd)?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::CommandFailed {
            step: step.to_string(),
            status,
            log: log.to_path_buf(),
        })
    }
}

/// What a captured command printed.
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` capturing stdout and stderr, which are also appended to `log`.
pub fn run_captured(cmd: &mut Command, step: &str, log: &Path) -> Result<Captured> {
    let mut file = open_log(log)?;
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| spawn_error(cmd, e))?;
    let write = |f: &mut File| -> std::io::Result<()> {
        writeln!(f, "\n$ {cmd:?}")?;
        f.write_all(&out.stdout)?;
        f.write_all(&out.stderr)
    };
    write(&mut file).map_err(Error::io(format!("write {}", log.display())))?;
    if out.status.success() {
        Ok(Captured {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    } else {
        Err(Error::CommandFailed {
            step: step.to_string(),
            status: out.status,
            log: log.to_path_buf(),
        })
    }
}

fn spawn_wait(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    let mut child = cmd.spawn().map_err(|e| spawn_error(cmd, e))?;
    child
        .wait()
        .map_err(Error::io(format!("wait for {:?}", cmd.get_program())))
}

fn spawn_error(cmd: &Command, e: std::io::Error) -> Error {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    if e.kind() == ErrorKind::NotFound {
        Error::MissingTool { tool }
    } else {
        Error::io(format!("run {tool}"))(e)
    }
}

fn open_log(log: &Path) -> Result<File> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io(format!("open {}", log.display())))
}

/// Fails with [`Error::MissingTool`] for the first of `tools` that is not
/// an executable file in a `PATH` directory: asked up front, so a build
/// does not get halfway before finding out.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        let found = std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
        if !found {
            return Err(Error::MissingTool {
                tool: (*tool).to_owned(),
            });
        }
    }
    Ok(())
}

/// Starts `log` afresh for a new build.
pub fn reset_log(log: &Path) -> Result<()> {
    open_log(log)?
        .set_len(0)
        .map_err(Error::io(format!("truncate {}", log.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    #[test]
    fn logs_output_and_reports_failure_with_log_path() {
        let dir = TestDir::new("cmd");
        let log = dir.path().join("logs/build.log");
        run_logged(
            Command::new("sh").args(["-c", "echo hello; echo oops >&2"]),
            "greet",
            &log,
        )
        .unwrap();
        let err = run_logged(
            Command::new("sh").args(["-c", "echo dying; exit 3"]),
            "die",
            &log,
        )
        .unwrap_err();
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("hello") && text.contains("oops") && text.contains("dying"));
        assert_eq!(err.log_path(), Some(log.as_path()));
        let msg = err.to_string();
        assert!(msg.starts_with("die failed"), "{msg}");
        assert!(!msg.contains('\n'), "errors are one line: {msg}");
        assert_eq!(crate::error::tail(&log, 1), "dying");
    }

    #[test]
    fn missing_program_is_a_missing_tool_error() {
        let dir = TestDir::new("cmd-missing");
        let log = dir.path().join("log");
        let err = run_logged(&mut Command::new("vmfork-no-such-tool"), "x", &log).unwrap_err();
        assert!(matches!(err, Error::MissingTool { ref tool } if tool == "vmfork-no-such-tool"));
    }

    #[test]
    fn required_tools_are_looked_up_in_path() {
        assert!(require_tools(&["sh"]).is_ok());
        let err = require_tools(&["sh", "vmfork-no-such-tool"]).unwrap_err();
        assert!(matches!(err, Error::MissingTool { ref tool } if tool == "vmfork-no-such-tool"));
    }

    #[test]
    fn captured_output_is_returned_and_logged() {
        let dir = TestDir::new("cmd-out");
        let log = dir.path().join("l");
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo hi; echo warn >&2"]);
        let out = run_captured(&mut sh, "echo", &log).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"warn\n");
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("hi\nwarn\n"), "{text}");
    }
}
