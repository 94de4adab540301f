//! Command-line conventions: --version, shell completions, colour, help
//! examples, and bad values refused before anything runs.

use std::process::{Command, Stdio};
use std::time::Instant;

use vmfork_tests::{assert_clean_error, exit, finish, vmfork, vmfork_bin, Run};

/// `vmfork ARGS...` with extra environment variables.
fn vmfork_with_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let output = Command::new(vmfork_bin())
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("spawn vmfork");
    finish(output, start)
}

#[test]
fn version_names_the_template_format() {
    let run = vmfork(&["--version"]);
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout.starts_with("vmfork 0."), "{run}");
    assert!(run.stdout.contains("(template format "), "{run}");
}

#[test]
fn completions_cover_the_subcommands() {
    let run = vmfork(&["completions", "bash"]);
    assert_eq!(run.status, 0, "{run}");
    for word in [
        "boot",
        "template",
        "restore",
        "clone",
        "ctl",
        "serve",
        "completions",
        "--mem",
    ] {
        assert!(run.stdout.contains(word), "bash completions lack {word}");
    }
    for shell in ["zsh", "fish"] {
        let run = vmfork(&["completions", shell]);
        assert_eq!(run.status, 0, "{run}");
        assert!(run.stdout.contains("restore"), "{shell}: {run}");
    }
    let run = vmfork(&["completions", "nosh"]);
    assert_clean_error(&run, exit::USAGE, "nosh");
}

#[test]
fn no_color_wins_over_clicolor_force() {
    let forced = vmfork_with_env(&["boot", "--help"], &[("CLICOLOR_FORCE", "1")]);
    assert_eq!(forced.status, 0, "{forced}");
    assert!(forced.stdout.contains('\x1b'), "no colour to take away");
    let plain = vmfork_with_env(
        &["boot", "--help"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    );
    assert_eq!(plain.status, 0, "{plain}");
    assert!(!plain.stdout.contains('\x1b'), "{plain}");
    let run = vmfork_with_env(
        &["boot", "--mem", "12X"],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    );
    assert!(!run.stderr.contains('\x1b'), "{run}");
}

#[test]
fn main_subcommands_show_examples() {
    for args in [
        &["boot", "--help"][..],
        &["template", "build", "--help"],
        &["restore", "--help"],
        &["clone", "--help"],
        &["serve", "--help"],
    ] {
        let run = vmfork(args);
        assert_eq!(run.status, 0, "{run}");
        assert!(run.stdout.contains("Examples:"), "{args:?}: {run}");
        assert!(run.stdout.contains("  vmfork "), "{args:?}: {run}");
    }
}

#[test]
fn bad_values_are_invalid_arguments_naming_the_flag() {
    for (args, flag) in [
        (vec!["clone", "/tmp", "--hold", "soon"], "--hold"),
        (vec!["clone", "/tmp", "--processes", "0"], "--processes"),
        (vec!["clone", "/tmp", "--backend", "disk"], "--backend"),
        (vec!["floor", "--rounds", "many"], "--rounds"),
        (
            vec!["serve", "--template", "a=/tmp", "--listen", "nowhere"],
            "--listen",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--max-concurrency", "0"],
            "--max-concurrency",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--max-body", "1Q"],
            "--max-body",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--header-timeout", "0"],
            "--header-timeout",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--body-timeout", "soon"],
            "--body-timeout",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--idle-timeout", "1x"],
            "--idle-timeout",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--max-connections", "0"],
            "--max-connections",
        ),
        (
            vec!["serve", "--template", "a=/tmp", "--drain-timeout", "1h"],
            "--drain-timeout",
        ),
        (
            vec!["template", "build", "--out", "/tmp/x", "--timeout", "0"],
            "--timeout",
        ),
    ] {
        let run = vmfork(&args);
        assert_clean_error(&run, exit::INVALID_ARGUMENT, flag);
        assert!(
            run.stderr.starts_with("vmfork: invalid argument: "),
            "{run}"
        );
    }
    // A missing value is a usage error, not a bad value.
    let run = vmfork(&["boot", "--mem"]);
    assert_clean_error(&run, exit::USAGE, "--mem");
}
