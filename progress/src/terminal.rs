//! The indicatif bar or spinner of [`ProgressMode::Terminal`], drawn on
//! stderr without asking the terminal its size.
//!
//! [`ProgressMode::Terminal`]: crate::ProgressMode::Terminal

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// A bar counting out of `total`, or a spinner when it is unknown, named
/// `label:` and drawn through [`Stderr`].
pub(crate) fn bar(total: Option<u64>, label: &str, color: bool) -> ProgressBar {
    let template = match (total.is_some(), color) {
        (true, true) => {
            "{spinner:.green} {prefix:.bold} [{elapsed}] {bar:30.cyan/blue} {pos}/{len} ({per_sec}, eta {eta}) {wide_msg}"
        }
        (true, false) => {
            "{spinner} {prefix} [{elapsed}] {bar:30} {pos}/{len} ({per_sec}, eta {eta}) {wide_msg}"
        }
        (false, true) => "{spinner:.green} {prefix:.bold} [{elapsed}] {wide_msg}",
        (false, false) => "{spinner} {prefix} [{elapsed}] {wide_msg}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ");
    let target = ProgressDrawTarget::term_like(Box::new(Stderr::new()));
    ProgressBar::with_draw_target(total, target)
        .with_style(style)
        .with_prefix(format!("{label}:"))
}

/// stderr as indicatif's terminal, with the width from `$COLUMNS` (else 80)
/// rather than TIOCGWINSZ, which the seccomp lists forbid.
#[derive(Debug)]
struct Stderr {
    width: u16,
}

impl Stderr {
    fn new() -> Stderr {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(80);
        Stderr { width }
    }

    fn put(&self, s: &str) -> std::io::Result<()> {
        std::io::stderr().write_all(s.as_bytes())
    }

    /// `ESC [ n CODE`, the cursor moves; nothing for 0, which a terminal
    /// would read as 1.
    fn move_cursor(&self, n: usize, code: char) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}{code}"))?;
        }
        Ok(())
    }
}

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        self.width
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.move_cursor(n, 'A')
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.move_cursor(n, 'B')
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.move_cursor(n, 'C')
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.move_cursor(n, 'D')
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
