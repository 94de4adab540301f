//! Progress output of `vmfork template build` and of the clone starts of
//! `vmfork clone` (the `vmfork-progress` crate, progress/src/lib.rs):
//! nothing under --json or --quiet; off a terminal, plain lines ending with
//! a one-line summary, which is always printed, however fast the work; on
//! a terminal (a pty from script(1)) a spinner, unstyled under NO_COLOR.

use vmfork_tests::{build_template, command, vmfork, vmfork_bin, Run, Scratch};

const PREFIX: &str = "vmfork template build: [";

fn build_args(out: &str) -> Vec<&str> {
    vec![
        "template",
        "build",
        "--mem",
        "64M",
        "--cmdline",
        "quiet=1",
        "--out",
        out,
    ]
}

fn progress_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.contains("vmfork template build:"))
        .collect()
}

#[test]
fn json_prints_no_progress() {
    let scratch = Scratch::new("progress-json");
    let out = scratch.str("t");
    let mut args = build_args(&out);
    args.push("--json");
    let run = vmfork(&args);
    assert_eq!(run.status, 0, "{run}");
    assert!(progress_lines(&run).is_empty(), "{run}");
    assert!(
        !run.stderr.contains('\x1b') && !run.stderr.contains('\r'),
        "{run}"
    );
    // stdout's last line is still the JSON report.
    assert!(run.json()["memory_bytes"].as_u64().is_some(), "{run}");
}

#[test]
fn quiet_prints_no_progress() {
    let scratch = Scratch::new("progress-quiet");
    let out = scratch.str("t");
    let mut args = build_args(&out);
    args.push("--quiet");
    let run = vmfork(&args);
    assert_eq!(run.status, 0, "{run}");
    assert!(progress_lines(&run).is_empty(), "{run}");
}

#[test]
fn plain_lines_off_a_terminal() {
    let scratch = Scratch::new("progress-plain");
    let out = scratch.str("t");
    let run = vmfork(&build_args(&out));
    assert_eq!(run.status, 0, "{run}");
    let lines = progress_lines(&run);
    let summary = lines.last().unwrap_or_else(|| panic!("no summary: {run}"));
    // `vmfork template build: [  0.1s] done: 0 MiB written, ...`
    let rest = summary
        .strip_prefix(PREFIX)
        .unwrap_or_else(|| panic!("{summary:?}"));
    let (secs, rest) = rest.split_once("s] ").expect("elapsed seconds");
    assert!(secs.trim().parse::<f64>().is_ok(), "{summary:?}");
    assert!(
        rest.starts_with("done: ") && rest.contains(" MiB written"),
        "{summary:?}"
    );
    for line in &lines {
        assert!(line.starts_with(PREFIX), "{line:?}");
    }
    assert!(
        !run.stderr.contains('\x1b') && !run.stderr.contains('\r'),
        "{run}"
    );
}

/// Runs `vmfork ARGS` on a pty through script(1), with `env` set.
fn on_a_terminal(args: &[&str], env: &str) -> Run {
    let line = std::iter::once(vmfork_bin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    command(
        "script",
        &["-qec", &format!("env {env} {line}"), "/dev/null"],
    )
}

#[test]
fn spinner_on_a_terminal_without_colour_under_no_color() {
    if command("script", &["-qec", "true", "/dev/null"]).status != 0 {
        eprintln!("skipped: no script(1) with -e");
        return;
    }
    let scratch = Scratch::new("progress-tty");
    let out = scratch.str("t");
    // The spinner's terminal is drawn without TIOCGWINSZ, which seccomp
    // forbids: a SIGSYS here would fail the build.
    let run = on_a_terminal(&build_args(&out), "NO_COLOR=1 COLUMNS=100");
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout.contains("vmfork template build: ["), "{run}");
    assert!(run.stdout.contains("done: "), "{run}");
    // No SGR (colour, bold) sequence; cursor moves and line clearing are
    // not styling.
    assert!(!has_sgr(&run.stdout), "{run}");
}

/// `clone -n N` counts its clones up: plain lines ending in a summary off
/// a terminal, none under --json, and on a terminal a bar drawn under the
/// seccomp filter (no SIGSYS).
#[test]
fn clone_counts_its_clones() {
    let scratch = Scratch::new("progress-clone");
    let dir = build_template(&scratch.str("t"), "64M", "quiet=1");
    let run = vmfork(&["clone", &dir, "-n", "4"]);
    assert_eq!(run.status, 0, "{run}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("vmfork clone: ["))
        .collect();
    let summary = lines.last().unwrap_or_else(|| panic!("no summary: {run}"));
    assert!(summary.contains("4 clones up (4/4, 100 %"), "{run}");
    let run = vmfork(&["clone", &dir, "-n", "4", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    assert!(!run.stderr.contains("vmfork clone:"), "{run}");
    if command("script", &["-qec", "true", "/dev/null"]).status != 0 {
        eprintln!("skipped the terminal: no script(1) with -e");
        return;
    }
    let run = on_a_terminal(&["clone", &dir, "-n", "4"], "NO_COLOR=1 COLUMNS=100");
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout.contains("4 clones up"), "{run}");
}

/// Whether `text` holds an `ESC [ digits;... m` sequence.
fn has_sgr(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|after| {
        let end = after.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
        end.starts_with('m')
    })
}

#[test]
fn sgr_detection() {
    assert!(has_sgr("a\x1b[32mgreen\x1b[0m"));
    assert!(has_sgr("\x1b[1;31mx"));
    assert!(!has_sgr("\r\x1b[2K\x1b[1Aplain"));
}
